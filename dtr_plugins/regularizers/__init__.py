"""Built-in regularisers: auxiliary losses on a backbone's hidden tokens against a frozen encoder (``repa``)."""
