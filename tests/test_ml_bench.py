"""ml.train.timing (and so ml.study.bench) names the machine its figures were measured on."""

from ml.train.timing import INSTRUCTION_SETS, machine


def test_the_machine_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    core = "processor\t: {n}\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni\n\n"
    cpuinfo.write_text(core.format(n=0) + core.format(n=1))
    found = machine(cpuinfo)
    assert found["cpu"] == "AMD EPYC 7B13"
    assert found["instruction_sets"] == ["avx2", "fma", "avx512f", "avx512_vnni"]  # in INSTRUCTION_SETS order
    assert found["cores"] >= 1


def test_without_cpuinfo_the_machine_is_named_and_no_instruction_set_is_claimed(tmp_path):
    found = machine(tmp_path / "missing")
    assert found["cpu"] and found["instruction_sets"] == []
    assert set(INSTRUCTION_SETS) >= {"avx2", "avx512_vnni"}
