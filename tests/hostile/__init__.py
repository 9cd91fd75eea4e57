"""Attack cases from the security probe (issue 15), generated inside the tests."""
