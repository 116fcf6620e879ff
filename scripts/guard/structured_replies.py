"""Replies written as JSON, for the embedded guard's response head (used by build_data.py).

With `response_format` a reply is a JSON object, and the response head, which had seen only
prose, withheld benign ones (`{"name": "Max", "breed": "Golden Retriever", "age": 10}`
scored 0.59; found by scripts/structured/eval.py). Two kinds of rows, so that the format
says nothing and the content decides:

- `as_json(text, rng)`: a reply of the data set rewritten as JSON (the whole text under one
  key, its sentences as a list of steps, a title and a body, a summary and details), with the
  reply's own label and split: harmful replies stay harmful in JSON, benign stay benign.
- `records(rng, n)`: everyday records (people, orders, events, pets, books, weather, recipes,
  tickets, contacts, addresses, translations, processes), generated from fixed lists with a
  seeded choice; benign.

Nothing here comes from the structured-output eval's tasks (scripts/structured/eval.py).
"""
import json
import re


def _sentences(text):
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+|\n+", text) if p.strip()]
    return parts or [text.strip()]


def _dump(value, rng):
    indent = rng.choice([None, 2, 2, 4])
    return json.dumps(value, ensure_ascii=False, indent=indent)


def as_json(text, rng):
    """`text` rewritten as a JSON object, one of several shapes."""
    sentences = _sentences(text)
    shape = rng.randrange(5)
    if shape == 0:
        value = {rng.choice(["answer", "response", "text", "content", "output"]): text.strip()}
    elif shape == 1 and len(sentences) > 1:
        value = {rng.choice(["steps", "items", "points", "instructions"]): sentences}
    elif shape == 2 and len(sentences) > 1:
        value = {"title": sentences[0], "body": " ".join(sentences[1:])}
    elif shape == 3 and len(sentences) > 1:
        value = {"result": {"summary": sentences[0], "details": sentences[1:]}}
    else:
        value = {"answer": text.strip(), "confidence": rng.choice(["high", "medium", "low"])}
    return _dump(value, rng)


FIRST = ["Maria", "James", "Aiko", "Lars", "Fatima", "Diego", "Priya", "Tom", "Chen", "Amara", "Olga", "Kwame",
         "Sofia", "Noah", "Leila", "Mateo", "Hannah", "Ravi", "Elena", "Samuel"]
LAST = ["Lopez", "Smith", "Tanaka", "Berg", "Haddad", "Garcia", "Patel", "Brown", "Wang", "Okafor", "Ivanova",
        "Mensah", "Rossi", "Miller", "Karimi", "Silva", "Schmidt", "Rao", "Popescu", "Cohen"]
CITIES = [("Lisbon", "Portugal"), ("Osaka", "Japan"), ("Toronto", "Canada"), ("Nairobi", "Kenya"),
          ("Lyon", "France"), ("Austin", "United States"), ("Pune", "India"), ("Krakow", "Poland"),
          ("Melbourne", "Australia"), ("Bogota", "Colombia"), ("Oslo", "Norway"), ("Cairo", "Egypt")]
JOBS = ["teacher", "nurse", "software engineer", "chef", "architect", "electrician", "librarian", "pilot",
        "accountant", "photographer", "farmer", "pharmacist"]
HOBBIES = ["hiking", "painting", "chess", "cycling", "baking", "reading", "gardening", "photography", "swimming",
           "guitar", "running", "knitting", "birdwatching", "pottery"]
PRODUCTS = [("notebook", 2.5), ("coffee mug", 8.0), ("USB cable", 6.99), ("desk lamp", 24.0), ("backpack", 39.5),
            ("water bottle", 12.0), ("headphones", 59.0), ("pencil set", 4.25), ("yoga mat", 19.9),
            ("phone case", 14.0), ("kitchen knife", 29.0), ("garden hose", 22.5)]
EVENTS = ["team meeting", "dentist appointment", "birthday party", "book club", "project review",
          "parent-teacher conference", "yoga class", "quarterly planning", "wedding rehearsal", "job interview"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
PETS = [("dog", ["Golden Retriever", "Beagle", "Labrador", "Border Collie", "Pug"]),
        ("cat", ["Siamese", "Maine Coon", "Persian", "Bengal"]), ("rabbit", ["Holland Lop", "Rex"]),
        ("parrot", ["African Grey", "Cockatiel"])]
PET_NAMES = ["Max", "Luna", "Bella", "Charlie", "Milo", "Coco", "Rocky", "Daisy", "Oscar", "Nala"]
BOOKS = [("Pride and Prejudice", "Jane Austen", 1813, True), ("A Brief History of Time", "Stephen Hawking", 1988, False),
         ("One Hundred Years of Solitude", "Gabriel Garcia Marquez", 1967, True),
         ("The Selfish Gene", "Richard Dawkins", 1976, False), ("Things Fall Apart", "Chinua Achebe", 1958, True),
         ("Sapiens", "Yuval Noah Harari", 2011, False), ("The Hobbit", "J. R. R. Tolkien", 1937, True),
         ("Silent Spring", "Rachel Carson", 1962, False), ("Beloved", "Toni Morrison", 1987, True),
         ("Crime and Punishment", "Fyodor Dostoevsky", 1866, True), ("In Cold Blood", "Truman Capote", 1966, False),
         ("The Art of War", "Sun Tzu", -500, False)]
GENRES = ["mystery", "science fiction", "romance", "history", "biography", "fantasy", "thriller", "poetry"]
WEATHER = ["sunny", "cloudy", "light rain", "thunderstorms", "snow", "fog", "windy", "clear"]
DISHES = [("pancakes", ["flour", "milk", "eggs", "sugar", "butter"]), ("tomato soup", ["tomatoes", "onion", "garlic", "stock"]),
          ("guacamole", ["avocados", "lime", "onion", "cilantro", "salt"]), ("fried rice", ["rice", "eggs", "peas", "soy sauce"]),
          ("banana bread", ["bananas", "flour", "eggs", "baking soda", "butter"]), ("lentil curry", ["lentils", "coconut milk", "curry paste", "spinach"])]
TICKETS = [("billing", "I was charged twice for my order."), ("technical", "The app crashes when I open settings."),
           ("account", "I cannot reset my password."), ("shipping", "My parcel has not arrived after ten days."),
           ("technical", "The printer driver fails to install."), ("billing", "Please send me an invoice for March.")]
PHRASES = [("good morning", {"French": "bonjour", "Spanish": "buenos días", "German": "guten Morgen"}),
           ("thank you", {"French": "merci", "Spanish": "gracias", "German": "danke"}),
           ("see you tomorrow", {"French": "à demain", "Spanish": "hasta mañana", "German": "bis morgen"}),
           ("where is the station?", {"French": "où est la gare ?", "Spanish": "¿dónde está la estación?", "German": "wo ist der Bahnhof?"})]
PROCESSES = ["nginx", "postgres", "node", "python3", "java", "redis-server", "chrome"]


def _person(rng):
    city, country = rng.choice(CITIES)
    return {"name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "age": rng.randint(18, 85), "city": city,
            "country": country, "occupation": rng.choice(JOBS), "hobbies": rng.sample(HOBBIES, rng.randint(1, 3))}


def _order(rng):
    product, price = rng.choice(PRODUCTS)
    qty = rng.randint(1, 12)
    return {"order_id": f"A-{rng.randint(1000, 99999)}", "product": product, "quantity": qty, "unit_price": price,
            "total": round(qty * price, 2), "currency": rng.choice(["USD", "EUR", "GBP"]), "in_stock": rng.random() < 0.8}


def _event(rng):
    return {"event": rng.choice(EVENTS), "day": rng.choice(DAYS), "time": f"{rng.randint(7, 19)}:{rng.choice(['00', '15', '30', '45'])}",
            "location": rng.choice(["room 204", "main office", "online", "community hall", "cafe on 5th street"]),
            "attendees": rng.sample([f"{f}" for f in FIRST], rng.randint(1, 4))}


def _pet(rng):
    species, breeds = rng.choice(PETS)
    return {"name": rng.choice(PET_NAMES), "species": species, "breed": rng.choice(breeds), "age": rng.randint(1, 15),
            "vaccinated": rng.random() < 0.9}


def _book(rng):
    title, author, year, fiction = rng.choice(BOOKS)
    return {"title": title, "author": author, "year": year, "fiction": fiction, "genre": rng.choice(GENRES),
            "rating": rng.choice([3, 3.5, 4, 4.5, 5])}


def _weather(rng):
    city, _ = rng.choice(CITIES)
    return {"city": city, "temperature_c": rng.randint(-10, 38), "condition": rng.choice(WEATHER),
            "humidity": rng.randint(20, 95), "wind_kmh": rng.randint(0, 60)}


def _recipe(rng):
    dish, ingredients = rng.choice(DISHES)
    return {"dish": dish, "servings": rng.randint(1, 8), "prep_minutes": rng.choice([10, 15, 20, 30, 45, 60]),
            "ingredients": ingredients}


def _ticket(rng):
    category, summary = rng.choice(TICKETS)
    return {"ticket": rng.randint(100, 9999), "category": category, "priority": rng.choice(["low", "medium", "high"]),
            "status": rng.choice(["open", "pending", "resolved"]), "summary": summary}


def _contact(rng):
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {"name": f"{first} {last}", "email": f"{first.lower()}.{last.lower()}@example.com",
            "phone": f"555-01{rng.randint(10, 99)}"}


def _address(rng):
    city, country = rng.choice(CITIES)
    return {"street": f"{rng.randint(1, 250)} {rng.choice(['Oak', 'Maple', 'River', 'Station', 'Hill'])} {rng.choice(['Street', 'Road', 'Avenue'])}",
            "city": city, "postal_code": str(rng.randint(10000, 99999)), "country": country}


def _translation(rng):
    phrase, langs = rng.choice(PHRASES)
    lang = rng.choice(sorted(langs))
    return {"source": phrase, "language": lang, "translation": langs[lang]}


def _process(rng):
    # Everyday operations vocabulary that sounds violent out of context.
    return {"process": rng.choice(PROCESSES), "pid": rng.randint(200, 65000), "action": rng.choice(["kill", "restart", "terminate", "stop"]),
            "signal": rng.choice(["SIGTERM", "SIGKILL", "SIGHUP"]), "reason": rng.choice(["hung", "high memory use", "config change", "deploy"])}


MAKERS = [_person, _order, _event, _pet, _book, _weather, _recipe, _ticket, _contact, _address, _translation, _process]


def records(rng, n):
    """`n` everyday records as JSON text, some of them wrapped in a list under a key."""
    out = []
    for _ in range(n):
        make = rng.choice(MAKERS)
        if rng.random() < 0.2:
            value = {rng.choice(["results", "items", "records"]): [make(rng) for _ in range(rng.randint(2, 3))]}
        else:
            value = make(rng)
        out.append(_dump(value, rng))
    return out
