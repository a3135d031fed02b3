"""A criterion of the small capital → full production step: P&L verified against the broker
statement (docs/broker-statements.md), the latest one matching the ledger within 7 days."""

from decimal import Decimal

from django.db import migrations

REASON = "P&L verified against the broker statement: a criterion of the default policy."


def create(apps, schema_editor):
    criterion_model = apps.get_model("golive", "PromotionCriterion")
    change_model = apps.get_model("golive", "PromotionCriterionChange")
    audit_model = apps.get_model("controlplane", "AuditEvent")
    criterion, created = criterion_model.objects.get_or_create(
        from_stage="small_capital",
        key="statement_verified_days",
        defaults={"threshold": Decimal(7), "version": 1, "updated_by": "system"},
    )
    if not created:
        return
    changes = {"enabled": [None, True], "threshold": [None, "7"]}
    label = "small_capital: statement_verified_days"
    change_model.objects.create(
        criterion=criterion,
        criterion_label=label,
        version=1,
        change="created",
        changed_by_label="system",
        reason=REASON,
        changes=changes,
    )
    audit_model.objects.create(
        actor="system",
        action="promotion_criterion_create",
        target_type="promotioncriterion",
        target_id=str(criterion.pk),
        target_label=label,
        reason=REASON,
        data={"version": 1, "changes": changes},
    )


def remove(apps, schema_editor):
    apps.get_model("golive", "PromotionCriterion").objects.filter(
        from_stage="small_capital", key="statement_verified_days"
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("golive", "0006_stage_labels"), ("controlplane", "0020_broker_statements")]
    operations = [migrations.RunPython(create, remove)]
