// The mongo-init Job (mongo.yaml) runs this with mongosh against mongo-0, directly. Safe to run again.
// 1. rs.initiate once; 2. the application's user, as deploy/mongo-init/app-user.js creates it for compose
// (readWrite on its own database only); 3. the exporter's monitoring user. Passwords come from the Secret;
// a second run sets them again, which is how they are rotated.
const env = process.env;
db.getSiblingDB("admin").auth(env.MONGO_ROOT_USERNAME, env.MONGO_ROOT_PASSWORD);

const members = ["mongo-0.mongo:27017", "mongo-1.mongo:27017", "mongo-2.mongo:27017"];
let initiated = true;
try {
  rs.status();
} catch (e) {
  if (e.codeName !== "NotYetInitialized") throw e;
  initiated = false;
}
if (!initiated) {
  rs.initiate({ _id: "rs0", members: members.map((host, i) => ({ _id: i, host })) });
  print("replica set rs0 initiated with " + members.join(", "));
}

// Users are written on the primary, whichever member that is now.
let primary = null;
for (let i = 0; i < 120 && !primary; i++) {
  primary = db.hello().primary || null;
  if (!primary) sleep(1000);
}
if (!primary) throw new Error("rs0 has no primary after 120 s");
const conn = new Mongo("mongodb://" + primary + "/?directConnection=true");
conn.getDB("admin").auth(env.MONGO_ROOT_USERNAME, env.MONGO_ROOT_PASSWORD);

function ensureUser(database, user, pwd, roles) {
  const target = conn.getDB(database);
  if (target.getUser(user)) {
    target.updateUser(user, { pwd: pwd, roles: roles });
    print("updated user " + user + " on " + database);
  } else {
    target.createUser({ user: user, pwd: pwd, roles: roles });
    print("created user " + user + " on " + database);
  }
}

ensureUser(env.MONGO_APP_DATABASE, env.MONGO_APP_USER, env.MONGO_APP_PASSWORD, [
  { role: "readWrite", db: env.MONGO_APP_DATABASE },
]);
// The name the exporter sidecar logs in with (MONGODB_USER in mongo.yaml).
ensureUser("admin", "metrics", env.MONGO_METRICS_PASSWORD, [
  { role: "clusterMonitor", db: "admin" },
  { role: "read", db: "local" },
]);
