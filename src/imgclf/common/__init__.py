"""What every command shares: settings, user errors, the command line, files on disk."""
