"""Test doubles and staging tools, never imported by the service path: the OneNET OTA
simulator (server, scenario, the platform's side of token auth) and a simulated fleet."""

# One product key for the demo, the benchmarks and the tests (base64, as OneNET issues them).
DEMO_PRODUCT_ID = "123123"
DEMO_ACCESS_KEY = "mjgvkTCYTBF6DguxMmm+aV9EkDp2CYfL5jzRTph5Th6KhU8gqZz/cBivPTA7tfY5"
