"""What the ingress and the workers both need: settings, the callback schema,
Redis keys, task state, the queue, the storage client and the error tree."""
