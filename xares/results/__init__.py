"""Results: score files, leaderboard, plots and their assets, the report command."""
