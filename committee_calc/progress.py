"""Progress bars that stay quiet in non-interactive runs."""
import sys


def progress_iter(iterable, enabled=True, desc=None, total=None):
    if not enabled or not sys.stderr.isatty():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False)
