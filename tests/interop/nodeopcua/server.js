// A node-opcua server for the OPC UA driver's interoperability test.
//
// Usage: node server.js PORT PKI_DIR
// Offers only Basic256Sha256 SignAndEncrypt (anonymous refused), one user "operator" whose
// password comes from the environment variable INTEROP_PASSWORD. Variables in namespace
// "urn:edge-agent:interop" under Objects/Plant: temperature (Double, changes every 50 ms,
// EngineeringUnits degC, EURange 0..150), pressure (Double, constant 2.5), count (UInt32,
// increments). Client certificates are accepted automatically (a test peer, not a trust store).
// Prints "ready <endpoint>" once listening; exits on SIGTERM.
"use strict";

const path = require("path");
const {
    OPCUAServer,
    OPCUACertificateManager,
    SecurityPolicy,
    MessageSecurityMode,
    DataType,
    Variant,
    standardUnits,
} = require("node-opcua");

async function main() {
    const port = parseInt(process.argv[2], 10);
    const pkiDir = process.argv[3];
    const password = process.env.INTEROP_PASSWORD;
    if (!port || !pkiDir || !password) {
        console.error("usage: INTEROP_PASSWORD=... node server.js PORT PKI_DIR");
        process.exit(2);
    }
    const serverCertificateManager = new OPCUACertificateManager({
        rootFolder: path.join(pkiDir, "server"),
        automaticallyAcceptUnknownCertificate: true,
    });
    await serverCertificateManager.initialize();
    const server = new OPCUAServer({
        port,
        hostname: "127.0.0.1",
        resourcePath: "/interop",
        serverCertificateManager,
        securityPolicies: [SecurityPolicy.Basic256Sha256],
        securityModes: [MessageSecurityMode.SignAndEncrypt],
        allowAnonymous: false,
        userManager: {
            isValidUser: (user, pass) => user === "operator" && pass === password,
        },
        buildInfo: { productName: "edge-agent interop peer" },
    });
    await server.initialize();
    const addressSpace = server.engine.addressSpace;
    const ns = addressSpace.registerNamespace("urn:edge-agent:interop");
    const plant = ns.addFolder(addressSpace.rootFolder.objects, {
        browseName: "Plant",
        nodeId: "s=Plant",
    });
    let temperature = 20.0;
    let count = 0;
    const temp = ns.addAnalogDataItem({
        organizedBy: plant,
        browseName: "temperature",
        nodeId: "s=Plant.temperature",
        dataType: "Double",
        engineeringUnitsRange: { low: 0, high: 150 },
        engineeringUnits: standardUnits.degree_celsius,
        minimumSamplingInterval: 50,
        value: new Variant({ dataType: DataType.Double, value: temperature }),
    });
    ns.addVariable({
        organizedBy: plant,
        browseName: "pressure",
        nodeId: "s=Plant.pressure",
        dataType: "Double",
        minimumSamplingInterval: 50,
        value: new Variant({ dataType: DataType.Double, value: 2.5 }),
    });
    const counter = ns.addVariable({
        organizedBy: plant,
        browseName: "count",
        nodeId: "s=Plant.count",
        dataType: "UInt32",
        minimumSamplingInterval: 50,
        value: new Variant({ dataType: DataType.UInt32, value: count }),
    });
    setInterval(() => {
        temperature = 20.0 + ((count % 100) * 0.5);
        count += 1;
        temp.setValueFromSource(new Variant({ dataType: DataType.Double, value: temperature }));
        counter.setValueFromSource(new Variant({ dataType: DataType.UInt32, value: count }));
    }, 50);
    await server.start();
    console.log(`ready ${server.getEndpointUrl()}`);
    const stop = async () => {
        await server.shutdown(0);
        process.exit(0);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
}

main().catch((err) => {
    console.error(err);
    process.exit(1);
});
