// Runs once, when the mongo container initialises an empty data volume (/docker-entrypoint-initdb.d), as root.
// The service connects as this user, which can read and write the application's database and nothing else:
// no other database, no user or role management, no server administration. The root account stays for people.
const appDb = db.getSiblingDB(process.env.MONGO_APP_DATABASE);
appDb.createUser({
  user: process.env.MONGO_APP_USER,
  pwd: process.env.MONGO_APP_PASSWORD,
  roles: [{ role: "readWrite", db: appDb.getName() }],
});
