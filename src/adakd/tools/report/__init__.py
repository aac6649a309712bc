"""Tables, summaries and plots from run directories."""
