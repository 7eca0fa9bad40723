"""The coordinator's service layer: the gRPC server and what it writes and guards — enrollment and credentials
(auth, pki), campaigns and dispatch, ingest (every device's report checked before it is stored), the store and its
database, the model store, the install server and wheelhouse, export/import. It may read answers/ and predict/;
neither of them imports it (tests/test_layers.py)."""
