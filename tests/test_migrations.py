"""Migrations that check the data they meet: they say what is wrong, rather than fail halfway on a constraint."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE, AFTER = ("analysis", "0011_outcome"), ("analysis", "0012_mrn_unique_in_any_case")


@pytest.fixture
def at_0011(transactional_db):
    executor = MigrationExecutor(connection)
    executor.migrate([BEFORE])
    yield MigrationExecutor(connection).loader.project_state([BEFORE]).apps
    MigrationExecutor(connection).migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def add_patients(apps, mrns: list[str]) -> None:
    Clinic, Patient = apps.get_model("analysis", "Clinic"), apps.get_model("analysis", "Patient")
    clinic = Clinic.objects.create(name="Migration clinic")
    for i, mrn in enumerate(mrns):
        Patient.objects.create(clinic=clinic, mrn=mrn, name=f"Patient {i}")


def test_mrns_that_differ_only_in_case_stop_the_migration_naming_them(at_0011):
    add_patients(at_0011, ["abc-1", "ABC-1", "xyz-2"])
    with pytest.raises(RuntimeError, match=r"differ only in case: clinic \d+: 2 patients with MRN 'abc-1'"):
        MigrationExecutor(connection).migrate([AFTER])
    Patient = at_0011.get_model("analysis", "Patient")
    Patient.objects.filter(mrn="ABC-1").delete()  # merged by an admin: the migration goes through
    MigrationExecutor(connection).migrate([AFTER])
