"""Built-in token routers (config ``token_routing``); each module is a plugin registered through the entry points."""
