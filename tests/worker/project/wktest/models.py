"""What the SQLite test's sync consumer writes: one row per message handled."""

from django.db import models


class Reading(models.Model):
    """One message of one conversation, and the thread that wrote it."""

    id = models.AutoField(primary_key=True)
    conv = models.CharField(max_length=50)
    n = models.IntegerField()
    before = models.IntegerField(help_text="rows of the conversation already there (read in the same transaction)")
    thread = models.BigIntegerField()

    class Meta:
        unique_together = [("conv", "n")]
