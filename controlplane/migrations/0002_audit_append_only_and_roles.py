from __future__ import annotations

from django.db import migrations

# The audit trail must survive a compromised or careless application: PostgreSQL itself
# refuses to change or remove a row. (TRUNCATE, an owner-only operation, stays possible
# for test isolation and for a deliberate, documented purge.)
APPEND_ONLY = """
CREATE FUNCTION controlplane_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER controlplane_auditevent_append_only
    BEFORE UPDATE OR DELETE ON controlplane_auditevent
    FOR EACH ROW EXECUTE FUNCTION controlplane_audit_append_only();
"""

DROP_APPEND_ONLY = """
DROP TRIGGER controlplane_auditevent_append_only ON controlplane_auditevent;
DROP FUNCTION controlplane_audit_append_only();
"""


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations (post_migrate); create them now so
    # the groups get them on a fresh database. The post_migrate hook re-syncs later apps' ones.
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, apps=apps)
        app_config.models_module = None

    from controlplane.roles import sync_roles

    sync_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunSQL(APPEND_ONLY, DROP_APPEND_ONLY),
        migrations.RunPython(create_roles, migrations.RunPython.noop),
    ]
