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
