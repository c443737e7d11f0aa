"""Verification by region (issue #14): a round may verify one region of a slide; rounds are
numbered per image and per region, and a region has at most one unfinished round."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotations", "0014_regions"),
        ("review", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="verificationround",
            name="uniq_round_number_per_image",
        ),
        migrations.AddField(
            model_name="verificationround",
            name="region",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.RESTRICT,
                related_name="verification_rounds",
                to="annotations.region",
            ),
        ),
        migrations.AddConstraint(
            model_name="verificationround",
            constraint=models.UniqueConstraint(
                condition=models.Q(("region__isnull", True)),
                fields=("image", "number"),
                name="uniq_round_number_per_image",
            ),
        ),
        migrations.AddConstraint(
            model_name="verificationround",
            constraint=models.UniqueConstraint(
                condition=models.Q(("region__isnull", False)),
                fields=("region", "number"),
                name="uniq_round_number_per_region",
            ),
        ),
        migrations.AddConstraint(
            model_name="verificationround",
            constraint=models.UniqueConstraint(
                condition=models.Q(("region__isnull", False), ("status__in", ["open", "disputed"])),
                fields=("region",),
                name="uniq_live_round_per_region",
            ),
        ),
    ]
