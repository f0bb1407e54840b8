// Node-RED settings for the load benchmarks: headless (no editor, no HTTP nodes), the flow
// file given on the command line, warnings only. The rig and broker ports come from the
// environment (RIG_HOST, RIG_PORT_<k>, MQTT_HOST, MQTT_PORT), substituted in the flows.
module.exports = {
    uiPort: parseInt(process.env.NODE_RED_PORT || "0", 10),
    uiHost: "127.0.0.1",
    httpAdminRoot: false,
    httpNodeRoot: false,
    credentialSecret: false,
    flowFilePretty: false,
    logging: { console: { level: process.env.NODE_RED_LOG || "warn", metrics: false, audit: false } },
    editorTheme: { tours: false },
};
