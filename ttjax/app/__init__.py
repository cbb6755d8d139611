"""The application layer of the ``ttjax`` command (the library proper is the rest of ttjax).

* :mod:`ttjax.app.resolve`: TASK / MODEL arguments -> :class:`~ttjax.app.resolve.TaskData` (features, labels,
  names; datasets embedded and cached);
* :mod:`ttjax.app.steps`: the analysis steps on resolved tasks (ground truth, scores, bound) as JSON-ready dicts;
* :mod:`ttjax.app.report`: tables, versioned JSON, CSV and figures of the result rows;
* :mod:`ttjax.app.commands`: ``bound``, ``score``, ``rank``, ``features``; :mod:`ttjax.app.demo`: ``demo``;
* :mod:`ttjax.app.parser`: the argparse parser. :func:`ttjax.cli.main` parses, dispatches and maps errors.
"""
