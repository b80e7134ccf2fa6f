"""The h5USID format."""
