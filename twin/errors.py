"""Errors a user can fix; the CLI prints their one-line message instead of a traceback."""


class TwinError(ValueError):
    """Bad input or an impossible configuration, with a one-line message naming the fix."""


class SchedulingError(RuntimeError):
    """An engine, simulated or real, reached a state a correct policy never produces."""


SimulationError = SchedulingError  # the name the simulator's callers know it by


def user_errors() -> tuple[type[Exception], ...]:
    """Every error class whose message is meant for the user as it is."""
    from policies import PolicyError
    from profiler.config import ConfigError
    from traces import TraceError

    found: list[type[Exception]] = [TwinError, PolicyError, ConfigError, TraceError]
    try:
        from profiler.profile_io import ProfileError

        found.append(ProfileError)
    except ImportError:
        pass
    return tuple(found)
