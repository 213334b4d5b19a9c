"""E8 and E9 checks (data quality vs quantity; where to merge), on the course data and made-up scores."""

from labkit import data
from labkit.exercises import check_data_quality, check_merge_choice

TRAIN = data.course_dataset("invoices", "train")
N = 8


def good_sets():
    clean = TRAIN[:N]
    return {"clean": clean, "noisy": data.corrupt_records(clean, 0.5, seed=0).records,
            "clean + 3x noisy": clean + data.corrupt_records(TRAIN[N:4 * N], 1.0, seed=1).records}


def results(clean, noisy, mix):
    return [{"set": "clean", "records": N, "exact_match": clean},
            {"set": "noisy", "records": N, "exact_match": noisy},
            {"set": "clean + 3x noisy", "records": 4 * N, "exact_match": mix}]


def test_check_data_quality_accepts_the_solution(capsys):
    assert check_data_quality(good_sets(), results(0.5, 0.25, 0.375), "clean")
    assert "✅" in capsys.readouterr().out
    # a tie goes to the smaller set
    assert check_data_quality(good_sets(), results(0.5, 0.25, 0.5), "clean")


def test_check_data_quality_rejects_slips(capsys):
    sets = good_sets()
    assert not check_data_quality(sets, results(0.5, 0.25, 0.375), "clean + 3x noisy")
    assert "read the table again" in capsys.readouterr().out
    assert not check_data_quality(sets, results(0.5, 0.25, 0.5), "clean + 3x noisy")
    assert "fewer records" in capsys.readouterr().out
    assert not check_data_quality(dict(sets, noisy=sets["clean"]), results(0.5, 0.25, 0.5), "clean")
    assert "damaged" in capsys.readouterr().out
    repeats = dict(sets, **{"clean + 3x noisy": sets["clean"] + data.corrupt_records(sets["clean"] * 3, 1.0).records})
    assert not check_data_quality(repeats, results(0.5, 0.25, 0.5), "clean")
    assert "rest of the training split" in capsys.readouterr().out


def test_check_merge_choice(capsys):
    merges = {"into the NF4 base": {"bits": 4, "vs_trained": 0.5, "exact_match": 0.5},
              "into the original fp32 base": {"bits": 32, "vs_trained": 14.0, "exact_match": 0.375},
              "into the dequantised NF4 base": {"bits": 32, "vs_trained": 0.8, "exact_match": 0.5}}
    assert check_merge_choice(merges, "into the dequantised NF4 base")
    assert not check_merge_choice(merges, "into the original fp32 base")
    assert "up to 14.00 from the trained model" in capsys.readouterr().out
    assert not check_merge_choice(merges, "into the NF4 base")  # closest here, but 4-bit forever
    assert "un-merged" in capsys.readouterr().out
    assert not check_merge_choice(merges, "into bf16")
    assert not check_merge_choice({"into the NF4 base": merges["into the NF4 base"]}, "into the NF4 base")
    assert not check_merge_choice({k: {"vs_trained": 0.1} for k in merges}, "into the NF4 base")
