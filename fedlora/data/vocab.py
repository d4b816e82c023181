"""Word lists behind the synthetic phone text: one vocabulary per topic, plus style pools.

Each topic has its own things, actions, places, people, events, adjectives and shopping items,
so that knowing a user's topic mix genuinely helps a language model predict their text. The
style pools (greetings, sign-offs, catchphrases, ...) are what per-user styles are drawn from;
they are large enough that two users rarely share a whole style.

Only data lives here; :mod:`fedlora.data.templates` turns it into sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlora.data.example import TOPICS


@dataclass(frozen=True)
class TopicVocab:
    """Slot fillers for one topic; phrases are written to drop into sentence templates."""

    things: tuple[str, ...]  # noun phrases with their article: "the quarterly report"
    actions: tuple[str, ...]  # bare verb phrases: "finish the slides"
    places: tuple[str, ...]  # "the office"
    roles: tuple[str, ...]  # people by role, no article: "manager"
    events: tuple[str, ...]  # "the standup"
    adjectives: tuple[str, ...]  # "busy"
    items: tuple[str, ...]  # things to buy: "sticky notes"
    facts: tuple[str, ...]  # encyclopedic sentences for the generic corpus


# fmt: off
VOCAB: dict[str, TopicVocab] = {
    "family": TopicVocab(
        things=(
            "the school run", "the birthday party", "the family photos", "grandma's recipe",
            "the kids' homework", "the bedtime story", "the new car seat", "the holiday plans",
            "the laundry", "the playdate", "the family dinner", "the packed lunches",
        ),
        actions=(
            "pick up the kids", "call mum", "visit grandma", "help with the homework",
            "book the babysitter", "wrap the presents", "tidy the kids' room", "bake a cake",
            "plan the sleepover", "sort the laundry", "read a bedtime story",
            "take the dog for a walk",
        ),
        places=(
            "the school gate", "grandma's house", "the playground", "the kitchen",
            "the living room", "the park", "my parents' place", "the nursery",
            "the swimming pool", "the back garden",
        ),
        roles=(
            "sister", "brother", "mum", "dad", "grandma", "grandpa", "cousin", "aunt", "uncle",
            "son", "daughter", "partner",
        ),
        events=(
            "the school play", "the family barbecue", "the birthday party", "Sunday lunch",
            "parents' evening", "the christening", "the anniversary dinner", "sports day",
            "the reunion", "the sleepover",
        ),
        adjectives=(
            "chaotic", "lovely", "exhausting", "sweet", "noisy", "cosy", "hectic", "fun",
            "emotional", "quiet",
        ),
        items=(
            "nappies", "milk", "bread", "juice boxes", "crayons", "birthday candles",
            "wrapping paper", "school shoes", "cereal", "bananas",
        ),
        facts=(
            "Family routines such as shared meals are linked to better wellbeing in children.",
            "Grandparents provide a large share of informal childcare in many countries.",
            "The average household spends several hours each week on laundry and cleaning.",
            "Birthday parties for young children are often held at home or in a local hall.",
        ),
    ),
    "work": TopicVocab(
        things=(
            "the quarterly report", "the slide deck", "the budget review", "the client proposal",
            "the project plan", "the sprint backlog", "the contract", "the performance review",
            "the team offsite", "the onboarding plan", "the expense report", "the product launch",
        ),
        actions=(
            "finish the slides", "reply to the client", "update the roadmap",
            "review the pull request", "prepare the agenda", "send the invoice",
            "book a meeting room", "fix the deployment", "write the summary",
            "chase the approvals", "clear my inbox", "sign the contract",
        ),
        places=(
            "the office", "the meeting room", "the coworking space", "the client's office",
            "the break room", "the train to work", "my desk", "the conference centre",
            "the home office", "reception",
        ),
        roles=(
            "manager", "boss", "colleague", "client", "intern", "team lead", "recruiter",
            "designer", "accountant", "engineer", "director", "coworker",
        ),
        events=(
            "the standup", "the all-hands", "the board meeting", "the deadline",
            "the one-to-one", "the interview", "the demo", "the workshop", "the client call",
            "the retro",
        ),
        adjectives=(
            "busy", "stressful", "productive", "endless", "boring", "intense", "smooth",
            "frustrating", "long", "rewarding",
        ),
        items=(
            "printer paper", "sticky notes", "a new charger", "coffee pods", "a notebook",
            "pens", "an HDMI cable", "a desk lamp", "headphones", "a laptop stand",
        ),
        facts=(
            "Many office workers spend more than a third of their working week in meetings.",
            "A standup meeting is a short daily meeting in which a team shares progress.",
            "Remote work became far more common in the early 2020s.",
            "Quarterly reports summarise a company's financial results over three months.",
        ),
    ),
    "fitness": TopicVocab(
        things=(
            "the training plan", "the new running shoes", "the half marathon", "the spin class",
            "my personal best", "the gym membership", "the stretching routine", "the rest day",
            "the protein shake", "the leg workout", "the 10k", "the climbing wall",
        ),
        actions=(
            "go for a run", "hit the gym", "stretch properly", "sign up for the race",
            "do some intervals", "book the spin class", "try the new trainer", "warm up first",
            "foam roll my legs", "swim a few lengths", "cycle to work", "do the plank challenge",
        ),
        places=(
            "the gym", "the track", "the park", "the pool", "the bike path",
            "the climbing centre", "the sports hall", "the river path", "the yoga studio",
            "the hill behind the house",
        ),
        roles=(
            "trainer", "running buddy", "coach", "gym partner", "teammate", "physio",
            "instructor", "spin teacher", "swim coach", "climbing partner",
        ),
        events=(
            "the parkrun", "the race", "the spin class", "leg day", "the training session",
            "the yoga class", "the match", "the long run", "bootcamp", "the swim meet",
        ),
        adjectives=(
            "sore", "pumped", "exhausted", "strong", "sweaty", "energised", "slow", "tough",
            "brutal", "great",
        ),
        items=(
            "protein bars", "electrolytes", "a water bottle", "new socks", "a resistance band",
            "energy gels", "a yoga mat", "bananas", "oats", "a sports bra",
        ),
        facts=(
            "Regular aerobic exercise strengthens the heart and lungs.",
            "A parkrun is a free, timed five kilometre run held every week in local parks.",
            "Stretching after exercise may reduce stiffness the following day.",
            "Interval training alternates short bursts of hard effort with recovery periods.",
        ),
    ),
    "health": TopicVocab(
        things=(
            "the blood test results", "the prescription", "the doctor's appointment",
            "my back pain", "the allergy tablets", "the physio exercises", "the dentist bill",
            "my sleep schedule", "the vitamins", "the flu jab", "the check-up", "my headache",
        ),
        actions=(
            "book a GP appointment", "take my tablets", "drink more water", "get some sleep",
            "pick up the prescription", "call the dentist", "rest my knee", "book the flu jab",
            "cut down on coffee", "do the breathing exercises", "check my blood pressure",
            "see the physio",
        ),
        places=(
            "the pharmacy", "the clinic", "the hospital", "the dentist", "the waiting room",
            "the GP surgery", "bed", "the sofa", "the walk-in centre", "the health centre",
        ),
        roles=(
            "doctor", "nurse", "dentist", "pharmacist", "physio", "therapist", "specialist",
            "GP", "optician", "midwife",
        ),
        events=(
            "the appointment", "the scan", "the check-up", "the blood test",
            "the therapy session", "the vaccination", "the follow-up", "the eye test",
            "the dentist visit", "the consultation",
        ),
        adjectives=(
            "tired", "achy", "better", "rough", "dizzy", "rested", "sick", "run down", "okay",
            "feverish",
        ),
        items=(
            "paracetamol", "plasters", "vitamin D", "cough syrup", "tissues", "eye drops",
            "ibuprofen", "throat lozenges", "a thermometer", "hand cream",
        ),
        facts=(
            "Adults are generally advised to sleep between seven and nine hours a night.",
            "A resting heart rate between 60 and 100 beats per minute is considered normal.",
            "Seasonal flu vaccines are updated every year to match circulating strains.",
            "Drinking enough water helps the body regulate its temperature.",
        ),
    ),
    "food": TopicVocab(
        things=(
            "the lasagne", "the curry recipe", "the sourdough starter", "the dinner reservation",
            "the leftovers", "the meal prep", "the new cafe", "the takeaway menu",
            "the birthday cake", "the pasta bake", "the farmers market", "the smoothie",
        ),
        actions=(
            "cook dinner", "order a takeaway", "try the new ramen place", "bake some bread",
            "book a table", "do the food shop", "prep lunches for the week", "make pancakes",
            "marinate the chicken", "grab a coffee", "try that recipe", "defrost the soup",
        ),
        places=(
            "the supermarket", "the kitchen", "the pizza place", "the cafe on the corner",
            "the market", "the bakery", "the noodle bar", "the food court", "the deli",
            "the restaurant",
        ),
        roles=(
            "chef", "flatmate", "waiter", "barista", "baker", "cooking class friend",
            "neighbour", "butcher", "host", "dinner guest",
        ),
        events=(
            "dinner", "lunch", "brunch", "the dinner party", "the barbecue", "the potluck",
            "the tasting menu", "breakfast", "the picnic", "the cooking class",
        ),
        adjectives=(
            "delicious", "spicy", "filling", "bland", "amazing", "greasy", "fresh", "sweet",
            "burnt", "tasty",
        ),
        items=(
            "eggs", "onions", "rice", "tomatoes", "garlic", "olive oil", "cheese", "chicken",
            "coffee beans", "spinach",
        ),
        facts=(
            "Sourdough bread is leavened by a culture of wild yeast and lactic acid bacteria.",
            "Ramen is a noodle soup that originated in China and became popular in Japan.",
            "Meal preparation in advance can reduce food waste and save money.",
            "Spices such as cumin and turmeric are common in many curry dishes.",
        ),
    ),
    "travel": TopicVocab(
        things=(
            "the flight", "the hotel booking", "the passport", "the train tickets",
            "the itinerary", "the rental car", "the boarding pass", "the travel insurance",
            "the road trip", "the luggage", "the visa application", "the airport transfer",
        ),
        actions=(
            "check in online", "pack my bag", "book the hotel", "renew my passport",
            "print the tickets", "exchange some money", "find a taxi", "download the maps",
            "confirm the apartment", "catch the early train", "charge the power bank",
            "plan the route",
        ),
        places=(
            "the airport", "the train station", "the hotel", "the beach", "the old town",
            "the departure lounge", "the campsite", "the ferry terminal", "the museum",
            "the mountains",
        ),
        roles=(
            "travel buddy", "tour guide", "host", "driver", "pilot", "receptionist",
            "travel agent", "roommate", "guide", "fellow traveller",
        ),
        events=(
            "the flight", "check-in", "the boat tour", "the layover", "the road trip",
            "the city tour", "the holiday", "the conference trip", "the hike",
            "the long weekend",
        ),
        adjectives=(
            "delayed", "amazing", "crowded", "relaxing", "jetlagged", "sunny", "beautiful",
            "expensive", "windy", "unforgettable",
        ),
        items=(
            "sunscreen", "a travel adapter", "snacks for the plane", "a neck pillow", "euros",
            "a toothbrush", "a phrasebook", "flip flops", "a rain jacket", "earplugs",
        ),
        facts=(
            "Jet lag occurs when the body clock is out of step with a new time zone.",
            "Many airlines open online check-in one or two days before departure.",
            "A passport is an official document that certifies a traveller's identity.",
            "Train travel produces far lower emissions per passenger than short flights.",
        ),
    ),
    "finance": TopicVocab(
        things=(
            "the rent", "the electricity bill", "the tax return", "the savings account",
            "the credit card statement", "the budget spreadsheet", "the pension",
            "the mortgage offer", "the insurance renewal", "my payslip", "the phone bill",
            "the refund",
        ),
        actions=(
            "pay the rent", "check the bank balance", "transfer the money",
            "cancel the subscription", "file the taxes", "set up a standing order",
            "split the bill", "save a bit more", "compare energy deals", "claim the refund",
            "update the budget", "move money into savings",
        ),
        places=(
            "the bank", "the post office", "the accountant's office", "the cash machine",
            "the tax office", "the banking app", "the estate agent", "the insurance office",
            "the building society", "the shop",
        ),
        roles=(
            "accountant", "landlord", "bank advisor", "flatmate", "financial advisor",
            "tax advisor", "estate agent", "insurance agent", "partner", "business partner",
        ),
        events=(
            "payday", "the tax deadline", "the mortgage meeting", "the bank appointment",
            "the end of the month", "the budget review", "the renewal date", "rent day",
            "the audit", "the bill run",
        ),
        adjectives=(
            "tight", "expensive", "cheap", "overdue", "affordable", "pricey", "worth it",
            "broke", "sorted", "worrying",
        ),
        items=(
            "stamps", "envelopes", "a new wallet", "printer ink", "a calculator",
            "a folder for receipts", "a piggy bank", "a notebook", "batteries", "a savings jar",
        ),
        facts=(
            "A budget is a plan that sets out expected income and spending over a period.",
            "Compound interest is interest earned on both savings and previous interest.",
            "Many people are paid monthly, which makes the end of the month a tight time.",
            "A standing order is an instruction to a bank to pay a fixed amount regularly.",
        ),
    ),
    "hobbies": TopicVocab(
        things=(
            "the guitar lesson", "the book club pick", "the jigsaw puzzle", "the garden",
            "the new board game", "the photography course", "the knitting project",
            "the model railway", "the painting", "the chess tournament", "the vinyl collection",
            "the pottery class",
        ),
        actions=(
            "practise guitar", "finish my book", "water the plants", "edit the photos",
            "paint for an hour", "play a board game", "learn a new chord", "knit a scarf",
            "go birdwatching", "work on the puzzle", "repot the cactus", "play chess online",
        ),
        places=(
            "the allotment", "the library", "the art studio", "the music shop",
            "the garden centre", "the community hall", "the record shop", "the book shop",
            "the craft fair", "the lake",
        ),
        roles=(
            "guitar teacher", "book club friend", "neighbour", "chess partner", "bandmate",
            "art teacher", "fellow gardener", "craft group", "choir leader", "quiz team",
        ),
        events=(
            "book club", "band practice", "the gig", "the quiz night", "the craft fair",
            "the open mic", "the exhibition", "choir", "games night", "the pottery class",
        ),
        adjectives=(
            "relaxing", "fun", "tricky", "satisfying", "creative", "peaceful", "fiddly",
            "addictive", "inspiring", "rewarding",
        ),
        items=(
            "guitar strings", "paint brushes", "yarn", "seeds", "compost", "a sketchbook",
            "film for the camera", "a new novel", "glue", "batteries",
        ),
        facts=(
            "Gardening combines light physical activity with time spent outdoors.",
            "Chess is a two player strategy game played on a board of sixty four squares.",
            "Book clubs meet regularly to discuss a book that all members have read.",
            "Learning a musical instrument takes regular practice over many months.",
        ),
    ),
}

# fmt: on

if tuple(VOCAB) != TOPICS:  # pragma: no cover - guards edits to this file
    raise RuntimeError("VOCAB must list exactly the topics of TOPICS, in order")

# fmt: off
TIME_REFS: tuple[str, ...] = (
    "tomorrow", "tonight", "later", "this weekend", "next week", "on Monday", "on Friday",
    "this afternoon", "after work", "in the morning", "before lunch", "on Saturday",
)
DAYS: tuple[str, ...] = (
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday",
)
FREQUENCIES: tuple[str, ...] = (
    "every day", "once a week", "on weekends", "every morning", "a few times a month",
    "in the evening", "at least once a year", "twice a week",
)
MOODS: tuple[str, ...] = (
    "ok", "good", "great", "meh", "tired", "low", "stressed", "calm", "happy", "anxious",
)

# People and pets. Users' friends and pets are drawn from these; the generic corpus uses
# them at random so that names are ordinary tokens to the base model.
FIRST_NAMES: tuple[str, ...] = (
    "Sam", "Alex", "Priya", "Tom", "Maria", "Jonas", "Aisha", "Ben", "Chloe", "Diego",
    "Emma", "Farah", "George", "Hana", "Ivan", "Julia", "Kofi", "Lena", "Marco", "Nina",
    "Omar", "Paula", "Quinn", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Yusuf",
    "Zoe", "Leo", "Mia", "Noah", "Isla", "Ravi", "Sofia", "Kai", "Elif", "Mateo",
    "Ines", "Luca", "Amara", "Finn", "Hugo", "Nadia", "Oscar", "Lila", "Theo", "Yara",
)
PET_NAMES: tuple[str, ...] = (
    "Biscuit", "Luna", "Max", "Pepper", "Mochi", "Rocky", "Bella", "Ziggy", "Noodle",
    "Coco", "Peanut", "Simba", "Waffles", "Pickle", "Ginger", "Bruno", "Olive", "Teddy",
)
PETS: tuple[str, ...] = ("dog", "cat", "rabbit", "puppy", "kitten", "hamster")

# Style pools: each user draws a few of these and keeps them.
GREETINGS: tuple[str, ...] = (
    "Hey!", "Hi :)", "Yo!", "Morning!", "Hiya!", "Hello hello!", "Heyyy!", "Oi oi!",
    "Howdy!", "Hey you!", "Sup?", "Ahoy!", "Evening!", "Hi hi!", "Greetings!",
    "Good morning!", "Hey there!", "Alright?", "Hellooo!", "Ello!",
)
SIGN_OFFS: tuple[str, ...] = (
    "xx", "Cheers!", "Talk soon.", "Love you x", "Ttyl", "Bye for now.", "Later!",
    "Peace out.", "Hugs!", "Speak soon.", "Ciao!", "Take care.", "Laters.",
    "Catch you later.", "Night!", "Much love.", "Over and out.", "See ya!", "Thanks!",
    "Byeee",
)
CATCHPHRASES: tuple[str, ...] = (
    "No worries.", "All good.", "Fingers crossed.", "Living the dream.",
    "Same old same old.", "Onwards and upwards.", "Easy peasy.", "Just saying.",
    "Cool cool.", "Oh well.", "As per usual.", "Sweet as.", "Bang on.", "Righto.",
    "Classic.", "Yikes.", "Nice one.", "Wild times.", "Such is life.", "Good vibes only.",
    "Happy days.", "What a time to be alive.", "Plot twist.", "Say less.",
    "Love that for us.", "Lush.", "Top stuff.", "Crikey.", "Hang in there.",
    "Keep calm and carry on.", "Go team.", "Absolute scenes.", "Tell me about it.",
    "Chin up.", "Ooh la la.", "And Bob's your uncle.", "Big mood.", "Not ideal.",
    "Could be worse.", "Let's gooo.",
)
FILLERS: tuple[str, ...] = (
    "Honestly", "Literally", "Basically", "Tbh", "Ngl", "Lol", "Haha", "Omg", "Ok so",
    "Right so", "Anyway", "Btw", "Fyi", "So yeah", "Welp", "Hmm",
)
EMOJIS: tuple[str, ...] = (
    ":)", ":D", ";)", "<3", ":P", "xD", ":-)", "^^", ":3", "(:", ":o", "\\o/", "o_O",
    ":/", "=)", "B)",
)
NOTE_PREFIXES: tuple[str, ...] = (
    "todo:", "TODO -", "[ ]", "note:", "reminder:", "*", "!!", "to do:", "->", "NB:",
)
LIST_SEPARATORS: tuple[str, ...] = (", ", " / ", "; ", " + ", " | ")
ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    ("you", "u"), ("your", "ur"), ("you're", "ur"), ("are", "r"), ("tomorrow", "tmrw"),
    ("tonight", "2nite"), ("please", "pls"), ("thanks", "thx"), ("because", "cuz"),
    ("before", "b4"), ("later", "l8r"), ("great", "gr8"), ("people", "ppl"),
    ("minutes", "mins"), ("with", "w/"), ("about", "abt"), ("really", "rly"),
    ("okay", "ok"), ("weekend", "wknd"), ("morning", "mornin"),
)
# fmt: on
