// A child process that runs only an MQTT bridge, so a test can SIGKILL it and watch the Last Will.
import { MqttBridge } from '../../src/gateway/mqtt/bridge.js';

const [url, prefix, gatewayId] = process.argv.slice(2);
const bridge = new MqttBridge({ url: url!, topics: { prefix: prefix!, gatewayId: gatewayId! }, protocolVersion: 5 });
await bridge.waitConnected();
process.stdout.write('connected\n');
setInterval(() => {}, 1000);
