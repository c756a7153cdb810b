"""HTTP in, nothing slow: take the provider's callback, check it, queue it, answer."""
