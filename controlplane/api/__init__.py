"""HTTP routes: thin adapters from requests to domain functions."""
