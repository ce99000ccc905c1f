"""Analysis of finished runs and the report (`smc-bench report`)."""
