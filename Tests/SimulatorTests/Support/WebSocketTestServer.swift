import Foundation

/// The Python WebSocket servers the mosquitto-backed WebSocket tests run against: a relay from MQTT over WebSocket to
/// mosquitto's TCP port, and a small JSON API server with iotgw's message shapes (`GatewaySimulationTests` runs the
/// simulator against iotgw's real WebSocket listener).
///
/// The script lives in this Swift string rather than in a `.py` file next to the tests, because SwiftPM warns about
/// files in a test target it does not know what to do with. It is written to a temporary file and run with
/// `python3` (from `PYTHON` or `PATH`), which needs the `websockets` package.
struct WebSocketTestServer {
    let process: Process
    let relayPort: Int
    let jsonPort: Int
    let directory: URL

    static let python = LocalProcess.find("python3", environment: "PYTHON")

    /// Whether `python3` with the `websockets` package is available.
    static let isAvailable: Bool = {
        guard let python else { return false }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", "import websockets.asyncio.server"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return false }
        for _ in 0..<500 where process.isRunning { usleep(20_000) }
        return !process.isRunning && process.terminationStatus == 0
    }()

    /// Starts the relay (to `brokerPort`) and the JSON API server on free loopback ports.
    static func start(brokerPort: Int) async throws -> WebSocketTestServer {
        guard let python else { throw LocalProcess.StartError(description: "python3 not found") }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("iotgw-sim-ws-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let script = directory.appendingPathComponent("ws_test_server.py")
        try source.write(to: script, atomically: true, encoding: .utf8)
        let relayPort = LocalProcess.freePort()
        let jsonPort = LocalProcess.freePort()
        let process = try await LocalProcess.start(
            python,
            arguments: [script.path, "--relay-port", "\(relayPort)", "--broker-port", "\(brokerPort)", "--json-port", "\(jsonPort)"],
            waitingFor: [relayPort, jsonPort]
        )
        return WebSocketTestServer(process: process, relayPort: relayPort, jsonPort: jsonPort, directory: directory)
    }

    func stop() {
        process.stop()
        try? FileManager.default.removeItem(at: directory)
    }

    static let source = #"""
#!/usr/bin/env python3
"""Loopback WebSocket servers for the simulator's tests, standing in for iotgw's WebSocket listener.

* ``--relay-port``: MQTT over WebSocket on path /mqtt (subprotocol ``mqtt``). Each connection is relayed byte for
  byte to a local MQTT broker's TCP port (``--broker-port``), so the simulator's own MQTT-over-WebSocket client
  talks to a real broker (mosquitto) through it.
* ``--json-port``: iotgw's JSON API on path /ws. ``subscribe`` and ``publish`` ops are answered with ``ack`` (or
  ``error``), and publishes fan out as ``message`` pushes to every matching subscription.

Loopback only; it stops on SIGTERM or when its standard input closes (the test process died).
"""
import argparse
import asyncio
import json
import signal
import sys
import time

from websockets.asyncio.server import serve


async def relay(connection, broker_port):
    if connection.request.path != "/mqtt":
        await connection.close(1008, "unknown path")
        return
    reader, writer = await asyncio.open_connection("127.0.0.1", broker_port)

    async def websocket_to_broker():
        async for message in connection:
            if isinstance(message, str):
                raise ValueError("MQTT over WebSocket needs binary frames")
            writer.write(message)
            await writer.drain()

    async def broker_to_websocket():
        while True:
            data = await reader.read(65536)
            if not data:
                return
            await connection.send(data)

    tasks = [asyncio.create_task(websocket_to_broker()), asyncio.create_task(broker_to_websocket())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        await connection.close()


def topic_matches(filter_, topic):
    filter_levels = filter_.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


class JSONBroker:
    def __init__(self):
        self.subscriptions = {}  # connection -> list of (filter, qos)

    async def handle(self, connection):
        path, _, query = connection.request.path.partition("?")
        if path != "/ws":
            await connection.close(1008, "unknown path")
            return
        # Like iotgw: the client id comes from the query (or is generated) and is announced first.
        client_id = dict(part.partition("=")[::2] for part in query.split("&") if part).get("client_id") or f"gen-{id(connection)}"
        await connection.send(json.dumps({"op": "connected", "client_id": client_id}))
        self.subscriptions[connection] = []
        try:
            async for text in connection:
                await self.on_message(connection, text)
        finally:
            del self.subscriptions[connection]

    async def on_message(self, connection, text):
        try:
            request = json.loads(text)
        except ValueError:
            await connection.send(json.dumps({"op": "error", "id": None, "reason": "not JSON"}))
            return
        op, request_id = request.get("op"), request.get("id")
        if op == "subscribe":
            self.subscriptions[connection].append((request["filter"], int(request.get("qos", 0))))
            await connection.send(json.dumps({"op": "ack", "id": request_id}))
        elif op == "publish":
            qos = int(request.get("qos", 0))
            if qos not in (0, 1):
                await connection.send(json.dumps({"op": "error", "id": request_id, "reason": "qos must be 0 or 1"}))
                return
            topic, payload = request["topic"], request.get("payload")
            for subscriber, filters in list(self.subscriptions.items()):
                granted = [sub_qos for filter_, sub_qos in filters if topic_matches(filter_, topic)]
                if granted:
                    push = {"op": "message", "topic": topic, "payload": payload, "qos": min(qos, max(granted)),
                            "retain": False, "ts": int(time.time() * 1000)}
                    try:
                        await subscriber.send(json.dumps(push))
                    except Exception:
                        pass
            await connection.send(json.dumps({"op": "ack", "id": request_id}))
        else:
            await connection.send(json.dumps({"op": "error", "id": request_id, "reason": "unknown op"}))


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--relay-port", type=int, required=True)
    parser.add_argument("--broker-port", type=int, required=True)
    parser.add_argument("--json-port", type=int, required=True)
    arguments = parser.parse_args()

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    # The test gives us a pipe as stdin: when it closes, the test process is gone and so should we be.
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))

    broker = JSONBroker()
    async with serve(lambda connection: relay(connection, arguments.broker_port), "127.0.0.1", arguments.relay_port,
                     subprotocols=["mqtt"], compression=None, max_size=None, ping_interval=None), \
            serve(broker.handle, "127.0.0.1", arguments.json_port, compression=None, ping_interval=None):
        await stop


if __name__ == "__main__":
    asyncio.run(main())
"""#
}
