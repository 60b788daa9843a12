"""Images in: reading uris under the operator's guards, decoding, the client's view, preprocessing, listing folders."""
