"""The one line a suite records for a failed run (``launchers.local.failure_line``)."""
from dtr_plugins.launchers.local import failure_line


def test_a_failed_runs_error_is_found_after_a_progress_bar_on_the_same_line():
    """A run's ``dtr: error:`` line written while a progress bar was drawn (no newline after the bar) is what
    the suite records, not the bar (a fresh user's suite recorded ``seed0:  10%|...`` as the error)."""
    output = ("\rseed0:   0%|          | 0/10 [00:00<?, ?it/s]\rseed0:  10%|#         | 1/10 [00:00<00:01,  8.69it/s]"
              "dtr: error: /data/3/bad.png: cannot read image\n"
              "\rseed0:  10%|#         | 1/10 [00:00<00:01,  8.69it/s]\n")
    assert failure_line(output, 2) == "/data/3/bad.png: cannot read image"
    assert failure_line("UserWarning: slow\nKilled\n", 137) == "Killed"
    assert failure_line("", 137) == "exit status 137"
