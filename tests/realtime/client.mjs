// A Socket.IO client for the Rust tests: the official `socket.io-client`, driven by one JSON
// command per line on stdin, reporting everything it sees as one JSON line on stdout.
//
//   {"cmd":"connect","url":"http://127.0.0.1:1234","token":"…","transports":["websocket"],"origin"?:"…"}
//   {"cmd":"emit","id":1,"event":"message.send","data":{…}}   -> {"type":"ack","id":1,"data":…}
//   {"cmd":"stall"}        stop reading from the socket (a slow consumer)
//   {"cmd":"disconnect"}
//
// Output: {"type":"connected"} | {"type":"connect_error","message":…} |
//         {"type":"event","event":…,"data":…} | {"type":"disconnect","reason":…}
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

let socket = null;
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

function connect({ url, token, transports, origin, plain }) {
  // `plain`: exactly what an app would write, `io(url, { auth })`, with the client's defaults
  // (long-polling first, then the upgrade to WebSocket).
  const options = plain ? {} : { reconnection: false, transports: transports ?? ["websocket"] };
  if (token !== undefined) options.auth = { token };
  // A browser sends its page's origin; Node sends none unless told.
  if (origin !== undefined) options.extraHeaders = { Origin: origin };
  socket = io(url, options);
  socket.on("connect", () => out({ type: "connected", id: socket.id }));
  socket.io.engine?.on?.("upgrade", (t) => out({ type: "upgraded", transport: t.name }));
  socket.on("connect_error", (err) => out({ type: "connect_error", message: err.message }));
  socket.on("disconnect", (reason) => out({ type: "disconnect", reason }));
  socket.onAny((event, data) => out({ type: "event", event, data }));
}

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const c = JSON.parse(line);
  switch (c.cmd) {
    case "connect":
      connect(c);
      break;
    case "emit":
      socket.emit(c.event, c.data, (ack) => out({ type: "ack", id: c.id, data: ack }));
      break;
    case "stall": {
      // Stop reading the TCP socket under the WebSocket: the server's writes back up.
      const ws = socket.io.engine.transport.ws;
      ws._socket.pause();
      ws._socket.removeAllListeners("data");
      out({ type: "stalled" });
      break;
    }
    case "disconnect":
      socket.disconnect();
      break;
    case "exit":
      process.exit(0);
  }
});
rl.on("close", () => process.exit(0));
