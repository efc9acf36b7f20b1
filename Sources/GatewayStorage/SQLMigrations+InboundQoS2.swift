extension SQLMigrations {
    /// v5: inbound QoS 2 exchanges awaiting PUBREL (`session_inbound_qos2`), so that after a restart a
    /// retransmitted PUBLISH is not routed twice and a PUBREL is still known. Identical on both dialects.
    static let inboundQoS2 = Migration(
        version: 5,
        name: "inbound QoS 2 exchanges",
        sqlite: [createInboundQoS2],
        postgres: [createInboundQoS2]
    )

    private static let createInboundQoS2 = """
        CREATE TABLE session_inbound_qos2 (
            client_id TEXT NOT NULL,
            packet_id INTEGER NOT NULL,
            PRIMARY KEY (client_id, packet_id)
        )
        """
}
