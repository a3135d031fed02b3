"""The shadow → small capital slippage criterion now measures what the market would have charged
beyond the engine's simulated prices (fill.market_price): its default threshold becomes 2 bps,
a change recorded in the policy's history, unless a risk manager already set it."""

from decimal import Decimal

from django.db import migrations

REASON = (
    "The criterion now measures the slippage the market would have charged beyond the modelled "
    "(fills' market_price, docs/going-live.md): a tolerance of 2 bps replaces the 5 bps absolute."
)


def change(apps, schema_editor):
    criterion_model = apps.get_model("golive", "PromotionCriterion")
    change_model = apps.get_model("golive", "PromotionCriterionChange")
    audit_model = apps.get_model("controlplane", "AuditEvent")
    criterion = criterion_model.objects.filter(
        from_stage="shadow", key="slippage_bps", version=1, threshold=Decimal(5)
    ).first()
    if criterion is None:  # edited by a person: theirs stands
        return
    criterion.threshold = Decimal(2)
    criterion.version = 2
    criterion.updated_by = "system"
    criterion.save(update_fields=["threshold", "version", "updated_by", "updated_at"])
    changes = {"threshold": ["5", "2"]}
    label = "shadow: slippage_bps"
    change_model.objects.create(
        criterion=criterion,
        criterion_label=label,
        version=2,
        change="changed",
        changed_by_label="system",
        reason=REASON,
        changes=changes,
    )
    audit_model.objects.create(
        actor="system",
        action="promotion_criterion_change",
        target_type="promotioncriterion",
        target_id=str(criterion.pk),
        target_label=label,
        reason=REASON,
        data={"version": 2, "changes": changes},
    )


class Migration(migrations.Migration):
    dependencies = [("golive", "0004_kill_drill")]
    operations = [migrations.RunPython(change, migrations.RunPython.noop)]
