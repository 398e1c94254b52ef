"""The Ray stages, each a thin layer over the pure module of the same stem: Train (`training`), Data
(`scoring`, `flagging`, `relabeling`), Tune (`sweep`), Serve (`serving`), and the pipeline that chains them
(`teacher_student`). They need the `ray` extra (`pip install 'raymlc[ray]'`)."""

try:
    import ray  # noqa: F401
except ModuleNotFoundError as error:
    raise ModuleNotFoundError(
        f"raymlc's Ray stages need {error.name!r}: install the ray extra (pip install 'raymlc[ray]')", name=error.name
    ) from None
