"""blip-cam: the PySide6 camera app that captions what it sees and answers questions about it.

The app uses only blip_core's public API (``blip_core.load`` and the result/error types) and
never imports ``training``. Pure logic (sources, prompts, questions, snapshots, model choice) lives
in Qt-free modules so it can be tested without a display; Qt code is in ``main_window``,
``widgets/``, ``capture``, ``jobs`` and ``worker``.
"""
