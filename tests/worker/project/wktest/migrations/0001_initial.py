from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list = []

    operations = [
        migrations.CreateModel(
            name="Reading",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("conv", models.CharField(max_length=50)),
                ("n", models.IntegerField()),
                ("before", models.IntegerField(
                    help_text="rows of the conversation already there (read in the same transaction)")),
                ("thread", models.BigIntegerField()),
            ],
            options={"unique_together": {("conv", "n")}},
        ),
    ]
