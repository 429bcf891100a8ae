"""Studies: pipeline runs over seeds or variants whose results are findings about the method, not the code."""
