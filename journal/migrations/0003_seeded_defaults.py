"""The default runbooks (with the alert rules and kinds of risk limit that point at them), the
review checklists and their schedules, owed from the day this runs."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from journal import reviews, runbooks


def seed(apps: Any, schema_editor: Any) -> None:
    runbooks.seed_defaults(apps)
    reviews.seed_defaults(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("journal", "0002_log_runbooks_reviews"),
        ("alerts", "0009_divergence_rule"),
    ]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
