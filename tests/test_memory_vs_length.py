"""benchmarks/memory_vs_length.py without a server: its summary and its refusals of bad flags."""
import pytest

from benchmarks import memory_vs_length as mvl


def step(full: int, device: int, thoughts: int = 0, recalls: int = 0) -> dict:
    return {"full_kv_tokens": full, "device_kv_tokens": device, "thoughts": thoughts, "zoom_recalls": recalls,
            "offloaded_tokens": 0}


def test_ratios_are_against_the_full_kv_of_the_same_length_even_without_a_full_row():
    traces = {"zoomr": [step(100, 100), step(1000, 400, 2, 1), step(2000, 250, 4, 3)]}
    (row,) = mvl.summarize(traces)
    assert row["output_kv_tokens"] == 2000
    assert row["peak_device_kv_tokens"] == 400  # no server peak in the records: the largest record
    assert row["reduction_vs_full"] == 8.0  # 2000 / 250 at the end
    assert row["peak_reduction_vs_full"] == 5.0  # 2000 / 400 at the peak
    assert (row["thoughts"], row["zoom_recalls"]) == (4, 3)


def test_the_servers_own_peak_wins_over_the_records_between_which_it_fell():
    steps = [step(100, 100), step(1000, 400), {**step(2000, 250), "peak_device_kv_tokens": 460}]
    (row,) = mvl.summarize({"zoomr": steps})
    assert row["peak_device_kv_tokens"] == 460
    assert row["peak_reduction_vs_full"] == round(2000 / 460, 2)


@pytest.mark.parametrize("argv, message", [
    (["--tokens", "0"], "--tokens must be positive"),
    (["--stream-interval", "0"], "--stream-interval must be positive"),
    (["--policies", "zoomr,quest"], "--policies takes names among"),
    (["--min-thought", "600"], "--min-thought must not exceed --max-thought"),
])
def test_bad_flags_get_one_line_and_exit_2_before_any_server_starts(argv, message, capsys):
    assert mvl.main(argv + ["--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
