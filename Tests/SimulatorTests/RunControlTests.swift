import Foundation
import Testing

@testable import Simulator

@Suite
struct RunControlTests {
    @Test func engineThreadsBlockedUntilDisconnectingAreReleasedByThePhaseChange() async {
        let control = RunControl(engines: 2, clients: 1)
        let released = DispatchGroup()
        let waiting = DispatchGroup()
        for _ in 0..<2 {
            waiting.enter()
            released.enter()
            let thread = Thread {
                waiting.leave()
                control.waitForDisconnecting()
                released.leave()
            }
            thread.start()
        }
        waiting.wait()
        control.setPhase(.draining)
        // Still blocked: only `.disconnecting` releases them (a zero timeout only looks).
        #expect(released.wait(timeout: .now()) == .timedOut)
        control.setPhase(.disconnecting)
        #expect(released.wait(timeout: .now() + .seconds(10)) == .success)
        // Once disconnecting, a late caller returns at once.
        control.waitForDisconnecting()
    }
}

@Suite("Spreading clients over MQTT loops")
struct LoopAssignmentTests {
    @Test("a consumer outnumbered by devices gets a loop of its own; the devices share the rest")
    func consumersApart() {
        let roles: [ClientPlan.Role] = Array(repeating: .device, count: 10) + [.consumer]
        #expect(Simulation.assign(Array(0..<11), roles: roles, loops: 2) == [[10], Array(0..<10)])
        #expect(Simulation.assign(Array(0..<11), roles: roles, loops: 3) == [[10], [0, 2, 4, 6, 8], [1, 3, 5, 7, 9]])
    }

    @Test("round-robin when consumers are as many as devices or more, with one loop, or without consumers")
    func roundRobin() {
        let fanOut: [ClientPlan.Role] = [.device] + Array(repeating: .consumer, count: 4)
        #expect(Simulation.assign(Array(0..<5), roles: fanOut, loops: 2) == [[0, 2, 4], [1, 3]])
        let fanIn: [ClientPlan.Role] = [.device, .device, .consumer]
        #expect(Simulation.assign([0, 1, 2], roles: fanIn, loops: 1) == [[0, 1, 2]])
        let devices: [ClientPlan.Role] = [.device, .device, .device]
        #expect(Simulation.assign([0, 1, 2], roles: devices, loops: 2) == [[0, 2], [1]])
        #expect(Simulation.assign([], roles: [], loops: 0) == [])
    }

    @Test("only the given indices are placed (the WebSocket clients go to their own engine)")
    func onlyGivenIndices() {
        let roles: [ClientPlan.Role] = [.device, .consumer, .device, .device, .device]
        #expect(Simulation.assign([0, 1, 3, 4], roles: roles, loops: 2) == [[1], [0, 3, 4]])
    }
}
