"""How ironcaged starts a Python agent: ``python -c <boot> SCRIPT ARGS...``,
where <boot> imports ``iron_cage`` (connecting the agent channel) and calls
:func:`main`, which runs SCRIPT as ``__main__`` the way ``python SCRIPT ARGS``
would: ``sys.argv == [SCRIPT, *ARGS]``, ``__name__ == "__main__"``, ``__file__``
absolute, ``sys.path[0]`` the script's directory, tracebacks naming the
script's own file and lines (the bootstrap's frames are left out), exit code 1
on an uncaught exception.
"""

import os
import sys


def main():
    argv = sys.argv[1:]
    if not argv:
        sys.stderr.write("iron_cage: no script given to run\n")
        sys.exit(2)
    script = argv[0]
    path = os.path.abspath(script)
    sys.argv[:] = argv
    sys.path[0] = os.path.dirname(os.path.realpath(path))
    try:
        import io
        with io.open_code(path) as f:
            source = f.read()
    except OSError as e:
        sys.stderr.write(f"{sys.executable}: can't open file {script!r}: [Errno {e.errno}] {e.strerror}\n")
        sys.exit(2)
    import importlib.machinery

    main_mod = sys.modules["__main__"]
    g = main_mod.__dict__
    for k in [k for k in g if k not in ("__name__", "__builtins__", "__doc__")]:
        del g[k]
    g.update(__file__=path, __cached__=None, __package__=None, __spec__=None, __doc__=None,
             __loader__=importlib.machinery.SourceFileLoader("__main__", path))
    try:
        exec(compile(source, path, "exec", dont_inherit=True), g)
    except SystemExit:
        raise
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != path:
            tb = tb.tb_next
        if tb is None and not isinstance(e, SyntaxError):
            tb = e.__traceback__
        # The default hook prints the exception's own traceback: trim that.
        e.__traceback__ = tb
        sys.excepthook(type(e), e, tb)
        if isinstance(e, KeyboardInterrupt):
            # As CPython does: die of SIGINT, so the parent sees it.
            import signal
            sys.stderr.flush()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        sys.exit(1)
