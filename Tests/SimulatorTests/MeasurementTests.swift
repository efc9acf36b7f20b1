import Testing

@testable import Simulator

@Suite
struct MeasurementTests {
    @Test func sizedPayloadsHaveExactSizeAndDecode() throws {
        var buffer: [UInt8] = []
        let probe = Probe(publisher: 42, sequence: 7, timestamp: 123_456_789_012)
        for size in [64, 65, 100, 1024] {
            ProbeCodec.encodeSized(probe, size: size, into: &buffer)
            #expect(buffer.count == size)
            #expect(ProbeCodec.decode(buffer) == probe)
        }
        ProbeCodec.encodeSized(probe, size: 64, into: &buffer)
        #expect(String(decoding: buffer, as: UTF8.self) == #"{"sim_pub":42,"sim_seq":7,"sim_ts":123456789012,"pad":"xxxxxxx"}"#)
    }

    @Test func probesAreFoundWhateverTheKeyOrderSpacingOrEscaping() {
        let reordered = Array(#"{"pad":"x", "sim_ts" : 3,"sim_seq": 2 , "sim_pub":1}"#.utf8)
        #expect(ProbeCodec.decode(reordered) == Probe(publisher: 1, sequence: 2, timestamp: 3))
        let escaped = Array(#""{\"sim_pub\":1,\"sim_seq\":2,\"sim_ts\":3}""#.utf8)
        #expect(ProbeCodec.decode(escaped) == Probe(publisher: 1, sequence: 2, timestamp: 3))
        #expect(ProbeCodec.decode(Array(#"{"sim_pub":1,"sim_seq":2}"#.utf8)) == nil)
        #expect(ProbeCodec.decode(Array(#"{"note":"sim_pub","sim_pub":5,"sim_seq":6,"sim_ts":7}"#.utf8)) == Probe(publisher: 5, sequence: 6, timestamp: 7))
    }

    @Test func templatesPutTheProbeFirstAndFillPlaceholders() throws {
        let template = try PayloadTemplate(#"{"device":"{id}","n":{seq},"at":{ts},"nested":{"a":1}}"#)
        var buffer: [UInt8] = []
        template.render(Probe(publisher: 3, sequence: 4, timestamp: 5), deviceID: "sim-3", into: &buffer)
        #expect(String(decoding: buffer, as: UTF8.self) == #"{"sim_pub":3,"sim_seq":4,"sim_ts":5,"device":"sim-3","n":4,"at":5,"nested":{"a":1}}"#)
        #expect(throws: PayloadTemplate.Invalid.self) { try PayloadTemplate("[1,2]") }
    }

    @Test func sequenceTrackerCountsDistinctAndDuplicates() {
        var tracker = SequenceTracker()
        for sequence: UInt64 in [0, 1, 2, 200, 1, 2, 5_000] { tracker.record(sequence) }
        #expect(tracker.unique == 5)
        #expect(tracker.duplicates == 2)
    }

    @Test func topicFiltersComeFromLibmosquitto() {
        #expect(TopicFilter.matches("devices/+/telemetry", topic: "devices/sim-1/telemetry"))
        #expect(!TopicFilter.matches("devices/+/telemetry", topic: "devices/sim-1/commands"))
        #expect(TopicFilter.isValid("a/#"))
        #expect(!TopicFilter.isValid("a/#/b"))
    }
}

@Suite
struct MiniMQTTTests {
    @Test func connectBytesMatchTheSpecification() {
        // MQTT 3.1.1 section 3.1: protocol name, level 4, flags (clean session + username + password), keep-alive 60.
        let bytes = MiniMQTT.connect(clientID: "c1", keepAlive: 60, version: .v311, username: "u", password: "p")
        #expect(bytes == [0x10, 20, 0, 4, 0x4D, 0x51, 0x54, 0x54, 4, 0xC2, 0, 60, 0, 2, 0x63, 0x31, 0, 1, 0x75, 0, 1, 0x70])
        // MQTT 5 adds an empty property length after the keep-alive.
        let v5 = MiniMQTT.connect(clientID: "c1", keepAlive: 60, version: .v5, username: nil, password: nil)
        #expect(v5 == [0x10, 15, 0, 4, 0x4D, 0x51, 0x54, 0x54, 5, 0x02, 0, 60, 0, 0, 2, 0x63, 0x31])
    }

    @Test func publishAndSubscribeBytes() {
        #expect(MiniMQTT.publish(topic: "a/b", payload: [0xFF], qos: 1, retain: true, packetID: 10, version: .v311)
            == [0x33, 8, 0, 3, 0x61, 0x2F, 0x62, 0, 10, 0xFF])
        #expect(MiniMQTT.publish(topic: "a", payload: [], qos: 0, retain: false, packetID: nil, version: .v5) == [0x30, 4, 0, 1, 0x61, 0])
        #expect(MiniMQTT.subscribe(packetID: 1, filter: "a/#", qos: 2, version: .v311) == [0x82, 8, 0, 1, 0, 3, 0x61, 0x2F, 0x23, 2])
    }

    @Test func decoderSplitsAStreamWhateverTheChunking() throws {
        // CONNACK, SUBACK, then a QoS 1 PUBLISH with a 200-byte payload (two-byte remaining length), fed one byte at a time.
        var stream: [UInt8] = [0x20, 2, 0, 0, 0x90, 3, 0, 1, 1]
        stream += MiniMQTT.publish(topic: "t", payload: Array(repeating: 7, count: 200), qos: 1, retain: false, packetID: 9, version: .v311)
        var decoder = MiniMQTT.Decoder(version: .v311)
        var packets: [MiniMQTT.Incoming] = []
        for byte in stream {
            [byte].withUnsafeBytes { decoder.feed($0) }
            while let packet = try decoder.next() { packets.append(packet) }
        }
        #expect(packets == [
            .connack(code: 0),
            .suback(packetID: 1, codes: [1]),
            .publish(topic: "t", payload: Array(repeating: 7, count: 200), qos: 1, retain: false, duplicate: false, packetID: 9),
        ])
    }

    @Test func decoderRejectsOverlongLengthsAndHugePackets() {
        var decoder = MiniMQTT.Decoder(version: .v311)
        [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01].withUnsafeBytes { decoder.feed($0) }
        #expect(throws: MiniMQTT.ProtocolError.self) { try decoder.next() }
        var small = MiniMQTT.Decoder(version: .v311, maximumPacketSize: 100)
        [0x30, 0xC8, 0x01].withUnsafeBytes { small.feed($0) }
        #expect(throws: MiniMQTT.ProtocolError.self) { try small.next() }
    }
}
