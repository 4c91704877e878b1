"""What more than one layer needs and none owns: the settings machinery, and the prefix-cache
block hashes the engine keeps and the router predicts. Standard library only, so the router
and the client side can use it without loading any engine code."""
