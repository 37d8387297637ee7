"""attncc's progress bars: tqdm in one format, `<prefix>[####....] k/n <label> [<elapsed>]`, on
stderr. The label is the bar's description (bar.set_description_str); every step is shown
(steps are compiles and timings, seconds apart). On a terminal the line is rewritten in place;
into a pipe or a file, tqdm separates the states with carriage returns."""
import sys

from tqdm import tqdm


def progress_bar(total, prefix="", label="", stream=None, enabled=True, width=24):
    """A tqdm bar of `total` steps (a context manager; close() leaves its last state)."""
    return tqdm(total=total, desc=label, file=stream or sys.stderr, disable=not enabled, ascii=".#",
                mininterval=0, miniters=1, dynamic_ncols=True,
                bar_format=prefix.replace("{", "{{").replace("}", "}}")
                + f"[{{bar:{width}}}] {{n_fmt}}/{{total_fmt}} {{desc}} [{{elapsed}}]")
