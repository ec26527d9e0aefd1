"""Database: typed models, engines and migrations."""
