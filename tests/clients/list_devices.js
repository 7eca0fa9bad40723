// A client written from protos/fleetfit/v1/fleetfit.proto alone (@grpc/grpc-js + @grpc/proto-loader): TLS trusting
// only the fleet's CA, no TLS-name override, and the operator token as "authorization: Bearer <token>" metadata.
// node list_devices.js PROTO HOST:PORT CA_FILE TOKEN_FILE  ->  prints the device ids and the speed table's columns
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [proto, address, caFile, tokenFile] = process.argv.slice(2);
const v1 = grpc.loadPackageDefinition(loader.loadSync(proto, {keepCase: true, longs: Number, arrays: true})).fleetfit.v1;
const token = fs.readFileSync(tokenFile, "utf8").trim();
const credentials = grpc.credentials.combineChannelCredentials(
  grpc.credentials.createSsl(fs.readFileSync(caFile)),
  grpc.credentials.createFromMetadataGenerator((_, done) => {
    const metadata = new grpc.Metadata();
    metadata.add("authorization", `Bearer ${token}`);
    done(null, metadata);
  }));
const fleet = new v1.FleetService(address, credentials);
const fail = (err) => { console.error(`error: ${err.code} ${err.details}`); process.exit(1); };
fleet.ListDevices({}, (err, reply) => {
  if (err) fail(err);
  fleet.GetTable({name: "speed"}, (err2, answer) => {
    if (err2) fail(err2);
    console.log(JSON.stringify({devices: reply.devices.map((d) => d.inventory.device_id),
                                columns: answer.table.columns}));
    process.exit(0);
  });
});
