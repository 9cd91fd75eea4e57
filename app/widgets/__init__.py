"""Small widgets of the main window: preview + overlay, controls, questions, snapshot browser."""
