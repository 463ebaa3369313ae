"""OneNET OTA adapter: the southbound client and a faithful simulator of the API."""
