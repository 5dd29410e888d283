"""Built-in report sections, registered through the ``advbench`` entry-point group like any third-party plugin.

- ``paper_tables``: the paper's Tables 1-4 beside this run, where the suite has a ``paper_reference``;
- ``baselines``: each baseline detector beside its published CIFAR-10 numbers, where ``paper_reference`` has
  ``baselines``;
- ``sweep``: the trade-off across a sweep's settings, where the run has a sweep;
- ``security``: attack success under detection, oblivious beside adaptive, and the sanity checks, where the run has
  security rows;
- ``seeds``: each figure's mean and spread across training seeds, where the suite has ``seeds``;
- ``controls``: which detectors are controls (label-only) and how the sections above treat them.

Disable with ``ADVBENCH_DISABLE_PLUGINS=reports``: the page keeps its generic tables.
"""

import advbench


@advbench.hookimpl
def report_sections(results):
    # imported here, not at load time: loading plugins (advbench list-plugins, run) needs no report code
    from advbench_reports import baselines, paper_tables, security, seeds, sweep

    sections = [s for s in (paper_tables.section(results), baselines.section(results), sweep.section(results),
                            security.section(results), seeds.section(results)) if s is not None]
    return sections or None
