"""The blob store: committed blobs under ``blobs/<alg>/<hex>`` and resumable ingests."""
