"""The window's pages: Welcome, Models, Data, Train, Chat, Runs."""
