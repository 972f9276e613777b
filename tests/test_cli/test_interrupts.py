"""The signal handlers around a command: what they raise while it runs, what they become after."""

import signal

import pytest

from rexdeploy import interrupts


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    policy = interrupts.after_command
    yield
    interrupts.after_command = policy
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_sigterm_raises_terminated_inside_the_block(restore_signals):
    with pytest.raises(interrupts.Terminated):
        with interrupts.signals_as_interrupts():
            signal.raise_signal(signal.SIGTERM)
    assert interrupts.interrupted_by(interrupts.Terminated()) == signal.SIGTERM


def test_handlers_are_restored_for_in_process_callers(restore_signals):
    interrupts.after_command = None
    before = signal.getsignal(signal.SIGTERM)
    with interrupts.signals_as_interrupts():
        assert signal.getsignal(signal.SIGTERM) is interrupts._handler
    assert signal.getsignal(signal.SIGTERM) is before


def test_cli_policy_ignores_signals_once_the_command_is_done(restore_signals):
    """The CLI's policy: no default-handler window between the command's end and exit, so a
    late SIGTERM can neither kill a finished build by the signal nor change its exit code."""
    interrupts.after_command = signal.SIG_IGN
    with interrupts.signals_as_interrupts():
        with interrupts.signals_as_interrupts():  # nested: hands back to the outer handler
            pass
        assert signal.getsignal(signal.SIGTERM) is interrupts._handler
    for s in (signal.SIGINT, signal.SIGTERM):
        assert signal.getsignal(s) == signal.SIG_IGN
    signal.raise_signal(signal.SIGTERM)  # ignored: the test process lives on


def test_exit_codes_follow_the_shell_convention():
    assert interrupts.exit_code(signal.SIGINT) == 130
    assert interrupts.exit_code(signal.SIGTERM) == 143
